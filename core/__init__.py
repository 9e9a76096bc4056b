"""The floor every other package stands on; it imports nothing of the project.

* `core.errors` — the one root of the errors a user can fix (`UserError`, with its exit status);
* `core.settings` — the one table of every numeric and enum setting's type and range (`SETTINGS`);
* `core.files`, `core.archives`, `core.remote` — atomic writes, safe archive extraction, downloads and their cache;
* `core.output_dir` — an output directory owned by one run (OS lock, stale temporaries, cleanup on failure);
* `core.weights`, `core.pretrained` — model directories: the weights reader, and the config / ``from_pretrained`` /
  ``save_pretrained`` base shared by the teacher and the student;
* `core.progress` — progress bars on a terminal, plain log lines elsewhere;
* `core.linear` — CPU linears on oneDNN;
* `core.openmp` — OpenMP threads that sleep when idle (set by the entry points before torch loads).
"""
