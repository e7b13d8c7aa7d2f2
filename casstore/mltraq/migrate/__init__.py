"""Migrate an MLtraq 0.1.165 project in place."""
