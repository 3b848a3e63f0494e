"""chain: hands a job from one rendered segment to the next, and the last one to stitch."""
