"""People on a shared app: accounts and their workspaces."""
