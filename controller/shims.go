package controller

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"sync"
)

// ShimGroupAnnotation groups tasks into one runc shim: the shim's start
// command joins the shim already serving the group, if any, before it
// looks at io.kubernetes.cri.sandbox-id. containerd then sends each
// sandbox's app containers to its pause task's shim.
const ShimGroupAnnotation = "io.containerd.runc.v2.group"

// shimGroups shares runc shims between pods: up to perShim pods of a
// handler have their pause tasks, and so their app containers, served by
// one shim. A pod is in its group from Start until its pause exits; a group
// no pod is in is retired, never used again: its shim exits as soon as it
// serves no task, and a pod joining it then could land in a shim that is
// shutting down. The reaper ends the shim of such a group if it does not
// exit (endIdleShim).
type shimGroups struct {
	// perShim is the pods per shim of each handler; 1 or less, or no entry,
	// means a shim of its own per pod.
	perShim func(handler string) int

	mu sync.Mutex // guards open, inUse and their groups
	// open are the groups pods may join, by handler.
	open map[string][]*shimGroup
	// inUse are the groups pods are in, open or retired, by ID.
	inUse map[string]*shimGroup
}

type shimGroup struct {
	id string
	// pods in the group, that is, started and not yet exited.
	pods int
}

func newShimGroups(perShim func(handler string) int) *shimGroups {
	return &shimGroups{perShim: perShim, open: map[string][]*shimGroup{}, inUse: map[string]*shimGroup{}}
}

func newShimGroup(id string) *shimGroup {
	return &shimGroup{id: id, pods: 1}
}

// join puts a pod of handler into a group with room, or a new one, and
// returns the group's ID; "" means a shim of the pod's own.
func (s *shimGroups) join(handler string) string {
	n := s.perShim(handler)
	if n <= 1 {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.open[handler] {
		if g.pods < n {
			g.pods++
			return g.id
		}
	}
	g := newShimGroup(newGroupID(handler))
	s.open[handler] = append(s.open[handler], g)
	s.inUse[g.id] = g
	return g.id
}

// rejoin counts a recovered pod, whose pause runs, into its group again.
func (s *shimGroups) rejoin(handler, id string) {
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.inUse[id]; ok {
		g.pods++
		return
	}
	g := newShimGroup(id)
	s.open[handler] = append(s.open[handler], g)
	s.inUse[id] = g
}

// leave takes a pod whose pause exited (or never started) out of group
// id, and retires the group if that left it empty.
func (s *shimGroups) leave(id string) {
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok {
		return
	}
	if g.pods--; g.pods > 0 {
		return
	}
	delete(s.inUse, id)
	for handler, groups := range s.open {
		s.open[handler] = slices.DeleteFunc(groups, func(o *shimGroup) bool { return o == g })
	}
}

// has reports whether pods are in group id, open or retired.
func (s *shimGroups) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.inUse[id]
	return ok
}

// retire stops pods from joining group id: its shim failed to take a task,
// and may be shutting down. Its pods need not leave it.
func (s *shimGroups) retire(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for handler, groups := range s.open {
		s.open[handler] = slices.DeleteFunc(groups, func(g *shimGroup) bool { return g.id == id })
	}
}

// newGroupID names a new group. It is random: group IDs name shim sockets,
// and one a previous containerd used may still have its shim.
func newGroupID(handler string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "berth-" + strings.ReplaceAll(handler, "/", "-") + "-" + hex.EncodeToString(b)
}
