"""Control: configuration, supervisor, rtmpmate-ctl."""
