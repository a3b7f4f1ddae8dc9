package envdclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

// Sentinel errors. Every error the client returns for a failed call is an
// *Error whose Is matches one of these (and, for deadlines and
// cancellation, also context.DeadlineExceeded / context.Canceled).
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrDeadlineExceeded   = errors.New("deadline exceeded")
	ErrCanceled           = errors.New("canceled")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrNotEnoughSpace     = errors.New("not enough space")
	ErrUnimplemented      = errors.New("unimplemented")
	ErrUnavailable        = errors.New("unavailable")
	ErrInternal           = errors.New("internal error")
	ErrUnknown            = errors.New("unknown error")
	// ErrStreamIdle: a stream or transfer received nothing, not even a
	// keepalive, for longer than its idle limit and was cancelled.
	ErrStreamIdle = errors.New("stream idle")
	// ErrUnexpectedStatus: a REST call answered a status it should not.
	ErrUnexpectedStatus = errors.New("unexpected status")
	// ErrProtocol: envd sent something the protocol does not allow (a
	// stream that does not start with a start event, or ends without an
	// end event).
	ErrProtocol = errors.New("protocol violation")
)

// Error is a failed call.
type Error struct {
	Op      string // the call, e.g. "Stat" or "GET /files"
	Status  int    // HTTP status for REST calls, 0 otherwise
	Code    string // Connect code name for RPCs ("not_found"), "" otherwise
	Message string // envd's message
	Err     error  // the underlying error, if any
	kind    error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	b.WriteString(": ")
	b.WriteString(e.kind.Error())
	if e.Message != "" && e.Message != e.kind.Error() {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// Kind returns the sentinel this error matches.
func (e *Error) Kind() error { return e.kind }

// Is matches the sentinel, and context errors for deadline/cancel kinds.
func (e *Error) Is(target error) bool {
	switch target {
	case e.kind:
		return true
	case context.DeadlineExceeded:
		return e.kind == ErrDeadlineExceeded
	case context.Canceled:
		return e.kind == ErrCanceled
	case ErrResourceExhausted:
		return e.kind == ErrNotEnoughSpace
	}
	return false
}

func (e *Error) Unwrap() error { return e.Err }

var codeKinds = map[connect.Code]error{
	connect.CodeCanceled:           ErrCanceled,
	connect.CodeUnknown:            ErrUnknown,
	connect.CodeInvalidArgument:    ErrInvalidArgument,
	connect.CodeDeadlineExceeded:   ErrDeadlineExceeded,
	connect.CodeNotFound:           ErrNotFound,
	connect.CodeAlreadyExists:      ErrAlreadyExists,
	connect.CodePermissionDenied:   ErrPermissionDenied,
	connect.CodeResourceExhausted:  ErrResourceExhausted,
	connect.CodeFailedPrecondition: ErrFailedPrecondition,
	connect.CodeAborted:            ErrAlreadyExists,
	connect.CodeOutOfRange:         ErrInvalidArgument,
	connect.CodeUnimplemented:      ErrUnimplemented,
	connect.CodeInternal:           ErrInternal,
	connect.CodeUnavailable:        ErrUnavailable,
	connect.CodeDataLoss:           ErrInternal,
	connect.CodeUnauthenticated:    ErrUnauthenticated,
}

var statusKinds = map[int]error{
	http.StatusBadRequest:                   ErrInvalidArgument,
	http.StatusUnauthorized:                 ErrUnauthenticated,
	http.StatusForbidden:                    ErrPermissionDenied,
	http.StatusNotFound:                     ErrNotFound,
	http.StatusMethodNotAllowed:             ErrUnimplemented,
	http.StatusNotAcceptable:                ErrInvalidArgument,
	http.StatusConflict:                     ErrAlreadyExists,
	http.StatusPreconditionFailed:           ErrFailedPrecondition,
	http.StatusRequestedRangeNotSatisfiable: ErrInvalidArgument,
	http.StatusTooManyRequests:              ErrResourceExhausted,
	499:                                     ErrCanceled,
	http.StatusInternalServerError:          ErrInternal,
	http.StatusNotImplemented:               ErrUnimplemented,
	http.StatusBadGateway:                   ErrUnavailable,
	http.StatusServiceUnavailable:           ErrUnavailable,
	http.StatusGatewayTimeout:               ErrDeadlineExceeded,
	http.StatusInsufficientStorage:          ErrNotEnoughSpace,
}

// wrap turns a transport or Connect error of op into an *Error.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if e, ok := errAs[*Error](err); ok {
		return e
	}
	if ce, ok := errAs[*connect.Error](err); ok {
		kind := codeKinds[ce.Code()]
		if kind == nil {
			kind = ErrUnknown
		}
		// connect reports a client-side http.Client timeout as unavailable
		// or unknown; the caller wants to know it was a deadline.
		if isTimeout(err) {
			kind = ErrDeadlineExceeded
		}
		return &Error{Op: op, Code: ce.Code().String(), Message: ce.Message(), Err: err, kind: kind}
	}
	return &Error{Op: op, Message: err.Error(), Err: err, kind: transportKind(err)}
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	ne, ok := errAs[net.Error](err)
	return ok && ne.Timeout()
}

func transportKind(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	case isTimeout(err):
		return ErrDeadlineExceeded
	}
	return ErrUnavailable
}

// statusError builds the error of a REST response with an unwanted status,
// reading envd's {"code","message"} body or plain text.
func statusError(op string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(string(body))
	var j struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &j) == nil && j.Message != "" {
		msg = j.Message
	}
	if msg == "" {
		msg = resp.Status
	}
	kind := statusKinds[resp.StatusCode]
	if kind == nil {
		kind = ErrUnexpectedStatus
	}
	return &Error{Op: op, Status: resp.StatusCode, Message: msg, kind: kind}
}

func protocolError(op, format string, args ...any) error {
	return &Error{Op: op, Message: fmt.Sprintf(format, args...), kind: ErrProtocol}
}
