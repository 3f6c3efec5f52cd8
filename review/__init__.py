"""Review in the browser: inspection verdicts, reviewer labels in a database, drift."""
