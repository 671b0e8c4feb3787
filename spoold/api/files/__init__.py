"""/v1/files: uploads kept in the spool, and the result files of jobs."""
