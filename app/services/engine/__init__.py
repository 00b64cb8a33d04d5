"""The execution engine: strategies decide, the engine runs and commits, the runner
dispatches, the reaper resumes what a crashed process abandoned."""
