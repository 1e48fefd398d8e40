"""Presentation: terminal tables (text, serving) and Markdown / HTML reports with charts (file)."""
