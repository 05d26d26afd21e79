"""`maserve check`: run every point of ModelArts' custom-image spec against a running service (or a
command it starts) and say what fails and why, so a defect shows before the upload, not after."""

from maserve.check.result import FAIL, PASS, SKIP, WARN, Result
from maserve.check.runner import Options, run

__all__ = ["FAIL", "PASS", "SKIP", "WARN", "Options", "Result", "run"]
