"""Faust tables of the coordinator."""
