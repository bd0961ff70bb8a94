package controller

// Failpoints, in test builds only (build tag berth_failpoint): a pod
// annotation FailpointAnnotationPrefix+<point> = "N" fails that sandbox's
// first N passes through the point, as a shim that did not answer would.
const (
	FailpointAnnotationPrefix = "io.berth.failpoint."
	// FailpointTaskDelete fails the deletion of an exited pause task.
	FailpointTaskDelete = "task-delete"
	// Start's steps fail once they are done, so that their undo has
	// something to undo: the sandbox files, the pause snapshot (before the
	// container is made), the container, the task, the task's start.
	FailpointStartFiles     = "start.files"
	FailpointStartSnapshot  = "start.snapshot"
	FailpointStartContainer = "start.container"
	FailpointStartTask      = "start.task"
	FailpointStartTaskStart = "start.task-start"
	// FailpointSharedShimRefuses fails the pause task's creation in a
	// shared shim, as a shim shutting down would, instead of making it.
	FailpointSharedShimRefuses = "start.shared-shim-refuses"
	// FailpointHoldTaskMake holds Start for the annotation's duration
	// ("2s") just before it makes the pause task, the making begun.
	FailpointHoldTaskMake = "start.hold-task-make"
	// FailpointLostShimDelete fails the deletion of a pause task containerd
	// lost in its shim, as a shim that did not answer in time would.
	FailpointLostShimDelete = "lost.shim-delete"
	// FailpointUndoPrefix and a Start step's name ("files", "snapshot",
	// "container", "task") fail that step's undo.
	FailpointUndoPrefix = "undo."
)
