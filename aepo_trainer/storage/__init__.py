"""The run's SQLite file: one module per table group, each the only one that writes its tables.

* `annotations`: the connection, the schema and its migrations; tables `meta`, `annotations`, `ledger`, `runs`.
* `usage`: table `usage`, the money ledger of LLM API calls, and the price table.
* `label_book`: tables `label_answers` and `label_reviews` (and `meta('labelling')`), the labelling page's answers and
  reviewers' verdicts.
* `label_sessions`: table `label_sessions`, the labelling page's sign-in sessions.
* `label_gold`: table `label_gold_answers`, answers to the labelling page's honeypot tasks.
* `reference_logps`: table `reference_logps`, the reference model's log-prob of each pool candidate (the trainer's
  policy signals compute each once per reference and reuse it across epochs, resumes, restarts and ranks).

Other modules use these modules' public functions, never SQL on a table they do not own.
"""
