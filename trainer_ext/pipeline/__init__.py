"""The pipeline: `trainer-ext run RECIPE`, recipes, the stage runner and one module per stage.

- `cli`: the `trainer-ext` command; `recipe`: YAML recipes and overrides;
- `pipeline`: `Pipeline` and `RUN_ORDER`, the list of stages; `runner`: what every stage shares (keys, markers,
  reuse and refusal, timing, process roles); `runs`: settings recording, the output folder's lock, interrupts;
- `stages/`: one module per stage; `shared`: what several stages use (training arguments, precision.json);
- `checks`: everything checked before long work; `rules`: the budget, the selection's pick and the guard;
- `summary`: the table `trainer-ext run` prints.
"""
