package vmtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMP is a minimal synchronous QEMU Machine Protocol client: one command
// at a time, asynchronous events are skipped.
type QMP struct {
	conn net.Conn
	r    *bufio.Reader
}

// DialQMP connects to a QMP unix socket, waiting up to timeout for QEMU to
// create it, and negotiates capabilities.
func DialQMP(path string, timeout time.Duration) (*QMP, error) {
	deadline := time.Now().Add(timeout)
	var conn net.Conn
	var err error
	for {
		conn, err = net.Dial("unix", path)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", path, err)
	}
	q := &QMP{conn: conn, r: bufio.NewReader(conn)}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if _, err := q.Run("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// Run executes one command and returns its "return" value.
func (q *QMP) Run(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	q.conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: bad reply %q: %w", cmd, line, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
}

// MigrationStatus returns query-migrate's status ("" before any migration).
func (q *QMP) MigrationStatus() (string, string, error) {
	raw, err := q.Run("query-migrate", nil)
	if err != nil {
		return "", "", err
	}
	var st struct {
		Status    string `json:"status"`
		ErrorDesc string `json:"error-desc"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", "", fmt.Errorf("query-migrate: %w", err)
	}
	return st.Status, st.ErrorDesc, nil
}

// WaitMigration polls until the migration completed, failed or timed out.
func (q *QMP) WaitMigration(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, desc, err := q.MigrationStatus()
		if err != nil {
			return err
		}
		switch st {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st, desc)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("migration still %q after %v", st, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
