"""This run's speed: the calibration loop (measure/calibration.py) at the run's start, in every
process that compares tests with a baseline or writes the results, and at its end where the
results are written; or the figure --taichi-limits-calibration gives.

A baseline's CPU and wall figures are compared scaled by the ratio of this run's calibration to
the baseline's (formats/baseline.py `compare`), and a saved baseline stores this run's.
"""

from __future__ import annotations

from ..formats.jsonreport import RunCalibration
from ..measure.calibration import calibrate
from ..model.records import Calibration


class RunSpeed:
    """Measured once per process when first asked for (the loop costs about 0.2 s)."""

    def __init__(self, setting: str | float, wanted: bool) -> None:
        """`setting`: --taichi-limits-calibration ("auto", "off", or seconds); `wanted`: the
        run compares or saves a baseline, or writes the JSON report."""
        self.setting = setting
        self.wanted = wanted and setting != "off"
        self._start: Calibration | None = None
        self._end: Calibration | None = None

    def _measure(self) -> Calibration:
        if isinstance(self.setting, float):
            return Calibration(self.setting, self.setting)
        return calibrate()

    def start(self) -> Calibration | None:
        """The calibration at the run's start (None: not calibrated)."""
        if self.wanted and self._start is None:
            self._start = self._measure()
        return self._start

    def finish(self) -> RunCalibration:
        """The start's and, measured now, the end's."""
        start = self.start()
        if self.wanted and self._end is None:
            self._end = self._measure()
        return RunCalibration(start, self._end)

    def run(self) -> RunCalibration:
        return RunCalibration(self._start, self._end)
