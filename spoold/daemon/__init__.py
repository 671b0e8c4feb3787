"""The daemon: the loop and its wiring (loop), the lease keeper thread, the job-io lanes, resumption of processing/ jobs."""
