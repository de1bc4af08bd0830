"""rtcxfer.worker: the worker's sessions, jobs and defences, in process and as a real process."""
