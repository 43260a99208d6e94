"""Ray Serve scoring endpoints: request validation, verdict rules, and the deployment.

``rayrlhf.serve.app`` (Ray, torch) is imported only by those who serve; the validation and
scoring rules are plain functions usable anywhere.
"""

from rayrlhf.serve.validation import RequestError, parse_score_request

__all__ = ["RequestError", "parse_score_request"]
