// Package failpoint injects faults into a sandbox's steps, in test builds
// only (build tag berth_failpoint): a pod annotation AnnotationPrefix+<point>
// = "N" fails that sandbox's first N passes through the point, as a shim
// that did not answer would. Tests use it to prove retries and rollbacks;
// in every other build each call is a no-op the compiler drops.
package failpoint

// The annotation prefix and the points.
const (
	AnnotationPrefix = "io.berth.failpoint."
	// TaskDelete fails the deletion of an exited pause task.
	TaskDelete = "task-delete"
	// Start's steps fail once they are done, so that their undo has
	// something to undo: the sandbox files, the pause snapshot (before the
	// container is made), the container, the task, the task's start.
	StartFiles     = "start.files"
	StartSnapshot  = "start.snapshot"
	StartContainer = "start.container"
	StartTask      = "start.task"
	StartTaskStart = "start.task-start"
	// SharedShimRefuses fails the pause task's creation in a
	// shared shim, as a shim shutting down would, instead of making it.
	SharedShimRefuses = "start.shared-shim-refuses"
	// HoldTaskMake holds Start for the annotation's duration
	// ("2s") just before it makes the pause task, the making begun.
	HoldTaskMake = "start.hold-task-make"
	// HoldReattach holds recovery's reload of the sandbox for the
	// annotation's duration just before it reattaches to the pause task.
	HoldReattach = "recover.hold-reattach"
	// LostShimDelete fails the deletion of a pause task containerd
	// lost in its shim, as a shim that did not answer in time would.
	LostShimDelete = "lost.shim-delete"
	// UndoPrefix and a Start step's name ("files", "snapshot",
	// "container", "task") fail that step's undo.
	UndoPrefix = "undo."
)
