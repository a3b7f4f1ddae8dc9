// Package auth decides who a request is: the access token check, signed
// /files URLs, and which Linux user a request acts as.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"

	"github.com/envd-go/envd/internal/state"
	"github.com/envd-go/envd/internal/users"
)

type userKey struct{}

// WithUser returns ctx carrying the resolved user of the request.
func WithUser(ctx context.Context, u *users.User) context.Context {
	return context.WithValue(ctx, userKey{}, u)
}

// UserFrom returns the user resolved for this request by the RPC
// interceptor, or nil if none ran.
func UserFrom(ctx context.Context) *users.User {
	u, _ := ctx.Value(userKey{}).(*users.User)
	return u
}

// RPCUser resolves the user an RPC acts as: the Basic-auth username when the
// header carries one, else the default user. Errors are Connect
// unauthenticated errors, as the SDK maps them to AuthenticationError.
func RPCUser(h http.Header, st *state.State) (*users.User, error) {
	r := http.Request{Header: h}
	if name, _, ok := r.BasicAuth(); ok {
		u, err := users.Lookup(name)
		if err != nil {
			return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", name))
		}
		return u, nil
	}
	name := st.DefaultUser()
	u, err := users.Lookup(name)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid default user: '%s'", name))
	}
	return u, nil
}

// UserInterceptor resolves the request's user before any RPC handler runs
// and stores it in the context (read it back with UserFrom).
func UserInterceptor(st *state.State) connect.Interceptor { return userInterceptor{st} }

type userInterceptor struct{ st *state.State }

func (i userInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		u, err := RPCUser(req.Header(), i.st)
		if err != nil {
			return nil, err
		}
		return next(WithUser(ctx, u), req)
	}
}

func (i userInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i userInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		u, err := RPCUser(conn.RequestHeader(), i.st)
		if err != nil {
			return err
		}
		return next(WithUser(ctx, u), conn)
	}
}

// ErrNoUser is returned by services when no interceptor resolved a user.
var ErrNoUser = errors.New("no user resolved for request")
