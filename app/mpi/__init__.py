"""Master patient index: identifier systems and validation, patient matching, linking, merge."""
