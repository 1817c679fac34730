"""End-to-end tests: a real relay process and real replica processes (no mocks)."""
