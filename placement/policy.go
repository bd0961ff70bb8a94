package placement

import "slices"

// GroupAnnotation groups tasks into one runc shim: the shim's start
// command joins the shim already serving the group, if any, before it
// looks at io.kubernetes.cri.sandbox-id. containerd then sends each
// sandbox's app containers to its pause task's shim.
const GroupAnnotation = "io.containerd.runc.v2.group"

// Scope is what a pod may share a shim with: the pods of its handler in its
// Kubernetes namespace, the usual tenant boundary, or, with no namespace,
// every pod of its handler (Policy.Scope), whose shims run what its own
// would.
type Scope struct {
	Handler, Namespace string
	// Runtime identifies what the shim runs: the handler's runtime type,
	// shim binary and options as the pod's Start found them. A group
	// whose shim was started otherwise (the handler changed since, or its
	// shim binary was replaced) takes no new pod, so that the change
	// reaches new pods at once; its shim serves its pods until they end.
	Runtime string
}

// Policy is how the pods of each runtime handler share shims.
type Policy struct {
	// PodsPerShim is how many pods of a handler share a shim, PerHandler the
	// same for handlers set apart; 1 or less gives every pod a shim of its
	// own.
	PodsPerShim int
	PerHandler  map[string]int
	// WarmHandlers are the handlers whose shared shim a shim keeper keeps
	// running while none of their pods does.
	WarmHandlers []string
	// CrossNamespace are the handlers whose pods share shims with pods of
	// other Kubernetes namespaces.
	CrossNamespace []string
	// Groupable says whether a handler's shim groups tasks: only the runc
	// shim does; any other would ignore the group.
	Groupable func(handler string) bool
}

// PerShim is how many pods of handler share a shim.
func (p Policy) PerShim(handler string) int {
	if p.Groupable == nil || !p.Groupable(handler) {
		return 1
	}
	if n, ok := p.PerHandler[handler]; ok {
		return n
	}
	return p.PodsPerShim
}

// Scope is what a pod of handler in Kubernetes namespace namespace, whose
// shim runs runtime (Scope.Runtime), may share a shim with: its handler's
// pods of its namespace, a tenant's pods apart from another's (a shim's
// crash, or its OOM kill, takes every pod it serves), unless the handler
// shares shims across namespaces.
func (p Policy) Scope(handler, namespace, runtime string) Scope {
	if p.SharesAcrossNamespaces(handler) {
		return Scope{Handler: handler, Runtime: runtime}
	}
	return Scope{Handler: handler, Namespace: namespace, Runtime: runtime}
}

// SharesAcrossNamespaces says whether handler's pods share shims with pods
// of other Kubernetes namespaces.
func (p Policy) SharesAcrossNamespaces(handler string) bool {
	return slices.Contains(p.CrossNamespace, handler)
}

// KeepsWarm says whether handler's shared shim is kept warm.
func (p Policy) KeepsWarm(handler string) bool {
	return slices.Contains(p.WarmHandlers, handler) && p.PerShim(handler) > 1
}
