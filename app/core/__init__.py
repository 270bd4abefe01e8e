"""Pure building blocks shared by every layer: errors, ids, time. No Flask, no pymongo."""
