"""The judging path: scores to a verdict (aggregate), the answer (answer), which models judge
(selection), where they saw a fake (explain)."""
