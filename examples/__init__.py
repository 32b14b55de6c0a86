"""Examples that use scratchnet from the outside; ``course_backend`` is an implementation under test."""
