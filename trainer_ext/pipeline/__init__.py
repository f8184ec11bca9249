"""The pipeline: `trainer-ext run RECIPE`, recipes, the stage runner and one module per stage."""
