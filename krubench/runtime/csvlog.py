"""The optional CSV logger (trainer.csv_log=true): every scalar TensorBoard gets, also as a row `step,tag,value`
of run_dir/metrics.csv, for spreadsheets and pandas without TensorBoard. Like the TensorBoard writer, a resumed
run first drops the rows an earlier process wrote after the checkpoint it continues from, so the file holds
exactly the rows of an uninterrupted run."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .files import atomic_write

METRICS_CSV = "metrics.csv"
HEADER = ["step", "tag", "value"]


class CSVMirror:
    """A SummaryWriter that also appends each add_scalar to run_dir/metrics.csv; everything else is the writer's."""

    def __init__(self, writer, run_dir: Path, start_step: int):
        self._writer = writer
        path = Path(run_dir) / METRICS_CSV
        kept = []
        if start_step > 0 and path.exists():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= start_step]
        text = io.StringIO()
        rows = csv.writer(text)
        rows.writerow(HEADER)
        rows.writerows([row[k] for k in HEADER] for row in kept)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)

    def add_scalar(self, tag: str, value, step: int, *args, **kwargs) -> None:
        self._writer.add_scalar(tag, value, step, *args, **kwargs)
        self._csv.writerow([step, tag, repr(float(value))])

    def flush(self) -> None:
        self._writer.flush()
        self._file.flush()

    def close(self) -> None:
        self._writer.close()
        self._file.close()

    def __getattr__(self, name):
        return getattr(self._writer, name)
