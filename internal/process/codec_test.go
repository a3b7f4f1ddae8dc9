package process

import (
	"bytes"
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/envd-go/envd/gen/process"
)

// TestJSONCodecMatchesProtojson: the fast path gives the same JSON value
// as protojson for every output kind, and other messages go to protojson.
func TestJSONCodecMatchesProtojson(t *testing.T) {
	data := func(d *pb.ProcessEvent_DataEvent) *pb.ProcessEvent {
		return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: d}}
	}
	payload := []byte("hi\x00\xff\"\\<>&\n")
	events := []*pb.ProcessEvent{
		data(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: payload}}),
		data(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: bytes.Repeat(payload, 1000)}}),
		data(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Pty{Pty: payload[:1]}}),
		data(&pb.ProcessEvent_DataEvent{}),
		{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: 42}}},
		{Event: &pb.ProcessEvent_End{End: endEvent(3 << 8)}},
		{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}},
	}
	var msgs []proto.Message
	for _, ev := range events {
		msgs = append(msgs, &pb.StartResponse{Event: ev}, &pb.ConnectResponse{Event: ev})
	}
	msgs = append(msgs, &pb.ListResponse{Processes: []*pb.ProcessInfo{{Pid: 1, Tag: proto.String("x")}}})
	for _, m := range msgs {
		got, err := jsonCodec{}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := protojson.Marshal(m)
		var g, w any
		if json.Unmarshal(got, &g) != nil || json.Unmarshal(want, &w) != nil {
			t.Fatalf("invalid JSON: %s / %s", got, want)
		}
		gb, _ := json.Marshal(g)
		wb, _ := json.Marshal(w)
		if !bytes.Equal(gb, wb) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
		back := m.ProtoReflect().New().Interface()
		if err := (jsonCodec{}).Unmarshal(got, back); err != nil || !proto.Equal(back, m) {
			t.Fatalf("round trip %v: %v", m, err)
		}
	}
	var req pb.StartRequest
	if err := (jsonCodec{}).Unmarshal([]byte(`{"process":{"cmd":"x"},"unknownField":1}`), &req); err != nil || req.GetProcess().GetCmd() != "x" {
		t.Fatalf("unknown fields: %v", err)
	}
}
