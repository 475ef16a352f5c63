"""Faust agents: thin wrappers that decode, call pure logic, write tables and send."""
