"""Storage on MongoDB (pymongo): current versions, history, key index, journal, events. Never imports Flask."""
