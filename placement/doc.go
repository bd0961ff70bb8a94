// Package placement decides which runc shim serves each pod's pause task,
// and so its app containers, and when a shared shim may be ended. It knows
// nothing of containerd: it keeps the rules, and the controller and the
// reaper ask before they act.
//
// A pod of a handler whose pods share shims (Policy) joins a group of its
// scope (its handler, and its Kubernetes namespace unless the handler
// shares across namespaces) from its Start until its pause exits:
//
//   - Join, Leave: a pod enters and leaves its group; Rejoin counts a
//     recovered pod in again.
//   - MakeTask, then Making.End: a pause task is being made in the group.
//     Until the group's first task is made, or the shim its making started
//     answers at its socket (ShimAnswers), one at a time is made, and a
//     group whose shim may be exiting takes none (ErrShimEnding); the
//     first making's Awaited says when another waits for it.
//   - DeleteTask: a task may be deleted; the group's last one waits for the
//     tasks being made, and ends the group's shim.
//   - Has: whether pods are in a group: a shim of a group no pod is in may
//     be ended once it serves nothing.
//   - Watch, Unwatch, TasksOf and ShimDied: the watch of a group's shim
//     process, whose death records its tasks' exits and ends the group.
//   - Keep, Unkeep, Rekeep, Fresh, IsOpen, and Keepers: a shim keeper, a
//     task that keeps a scope's shared shim warm while none of its pods
//     runs.
//
// The shim process itself (its socket, shutdown and death) is package
// shimproc's; making and deleting tasks is the controller's and the
// reaper's.
package placement
