"""The judging path: scores to a verdict (aggregate, judge), when it is uncertain and why
(rules, reasons), the answer (answer), which models judge (selection), where they saw a fake
(explain)."""
