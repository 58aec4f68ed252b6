"""The run's SQLite file: one module per table group, each the only one that writes its tables.

* `annotations`: the connection, the schema and its migrations; tables `meta`, `annotations`, `ledger`, `runs`.
* `usage`: table `usage`, the money ledger of LLM API calls, and the price table.
* `label_book`: table `label_answers` (and `meta('labelling')`), the labelling page's answers.

Other modules use these modules' public functions, never SQL on a table they do not own.
"""
