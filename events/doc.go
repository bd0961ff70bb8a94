// Package events is berth's backoff event monitor: pause tasks' exits come
// in, each to the handler its sandbox's watch gave, the moment containerd
// reports it; handling that fails (a kill, a task's deletion, a rollback)
// is run again with a backoff until it succeeds.
//
// The retry queue is keyed by sandbox ID: the steps of one sandbox run one
// at a time and in the order they failed, and no sandbox ever waits on
// another's.
package events
