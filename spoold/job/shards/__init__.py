"""A job split across daemons: the shard plan (plan), a shard's end and the merge (end), the merged live status (status)."""
