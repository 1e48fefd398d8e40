"""Presentation: terminal tables (text) and Markdown / HTML reports with charts (file)."""
