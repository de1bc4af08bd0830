"""rtcxfer.files: peer paths, safe ZIP extraction, receiving files, write-behind, shared storage."""
