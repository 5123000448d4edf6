"""Files on disk: atomic writes, free space and quotas, the JSON database."""
