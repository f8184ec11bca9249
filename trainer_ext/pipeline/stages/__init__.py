"""One module per stage of `trainer-ext run`. Each declares its `Stage` (or two, where two stages share their body's
helpers): its name, its body, the stages it reads. `pipeline.RUN_ORDER` lists them in the order they run."""
