package process

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/envd-go/envd/gen/process"
)

// HandlerOptions are the connect options the Process handler should be
// built with: a JSON codec whose output for output chunks is written
// directly (protojson scans every base64 byte for escapes, which caps JSON
// streaming far below the proto codec). Everything else goes to protojson.
func HandlerOptions() []connect.HandlerOption {
	return []connect.HandlerOption{connect.WithCodec(jsonCodec{})}
}

type jsonCodec struct{}

func (jsonCodec) Name() string { return "json" }

func (c jsonCodec) Marshal(m any) ([]byte, error) { return c.MarshalAppend(nil, m) }

// MarshalAppend renders {"event":{"data":{"<kind>":"<base64>"}}} itself,
// the exact form protojson gives for a DataEvent.
func (jsonCodec) MarshalAppend(dst []byte, m any) ([]byte, error) {
	var ev *pb.ProcessEvent
	switch r := m.(type) {
	case *pb.StartResponse:
		ev = r.GetEvent()
	case *pb.ConnectResponse:
		ev = r.GetEvent()
	}
	if d := ev.GetData(); d != nil {
		var key string
		var data []byte
		switch o := d.GetOutput().(type) {
		case *pb.ProcessEvent_DataEvent_Stdout:
			key, data = "stdout", o.Stdout
		case *pb.ProcessEvent_DataEvent_Stderr:
			key, data = "stderr", o.Stderr
		case *pb.ProcessEvent_DataEvent_Pty:
			key, data = "pty", o.Pty
		}
		if key != "" {
			dst = append(dst, `{"event":{"data":{"`...)
			dst = append(dst, key...)
			dst = append(dst, `":"`...)
			dst = appendBase64(dst, data)
			return append(dst, `"}}}`...), nil
		}
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("json codec: %T is not a proto.Message", m)
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, pm)
}

// Unmarshal is connect's own JSON decoding: unknown fields are ignored.
func (jsonCodec) Unmarshal(b []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("json codec: %T is not a proto.Message", m)
	}
	if len(b) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, pm)
}
