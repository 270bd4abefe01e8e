"""Master patient index (DESIGN §3): identifier systems and validation, patient matching, linking, merge."""
