"""Rendering of results for people: terminal (rich) now, HTML later."""
