"""Data preparation: what kind of dataset a run got, the row checks, pool preparation and the collator.

* `validation`: the error types, the dataset kinds and the checks of every row before any paid or slow work.
* `pools`: candidate pools (`{"prompt", "completions": [...]}`) prepared once for a run.
* `collator`: `AEPODataCollator`, which keeps pool rows whole for the training step.
"""
