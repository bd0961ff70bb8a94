package podsandbox

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// Errors for pod configs that can never run. Each names the field at fault
// and carries the errdefs class CRI turns into the gRPC code kubelet sees:
// InvalidArgument for a value no node accepts, NotFound for a profile the
// node does not have, FailedPrecondition for what this node cannot do. The
// built-in controller returns Unknown for all of them; the README lists
// berth's codes. WithMessage keeps the class's name out of the text.

func invalidf(field, format string, args ...any) error {
	return errdefs.ErrInvalidArgument.WithMessage(field + ": " + fmt.Sprintf(format, args...))
}

func notFoundf(field, format string, args ...any) error {
	return errdefs.ErrNotFound.WithMessage(field + ": " + fmt.Sprintf(format, args...))
}

func preconditionf(field, format string, args ...any) error {
	return errdefs.ErrFailedPrecondition.WithMessage(field + ": " + fmt.Sprintf(format, args...))
}
