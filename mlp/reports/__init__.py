"""What a person reads after a run: reports and experiment tracking.

* ``markdown``   Markdown and PNG helpers every report shares (run, sweep, pipeline);
* ``run_report`` one training run's ``report.md`` and the advice it may end with;
* ``tracking``   TensorBoard event files and MLflow runs.
"""
