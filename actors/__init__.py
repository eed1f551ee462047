"""Ray actors (thin wrappers) and the logic they run (plain classes, testable without Ray)."""
