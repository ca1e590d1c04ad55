package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// demo calls the gateway at addr once for each method kind, and once for an
// error, printing what came back: the whole path works, with nothing but this
// binary. Each line is "echo: demo <method>: <result> (<latency>)"; the
// first call includes connecting. It returns the first failure.
func demo(ctx context.Context, addr string) error {
	cc, err := grpc.NewClient(addr, append(runtime.CallerDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return err
	}
	defer cc.Close()
	c := echov1.NewEchoServiceClient(cc)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	steps := []struct {
		name string
		call func() (string, error)
	}{
		{`EchoUnary {"message":"hello"}`, func() (string, error) {
			r, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"})
			return fmt.Sprintf("%q", r.GetMessage()), err
		}},
		{`EchoServerStream {"message":"hi","repeat":3}`, func() (string, error) {
			s, err := c.EchoServerStream(ctx, &echov1.EchoRequest{Message: "hi", Repeat: 3})
			if err != nil {
				return "", err
			}
			var got []string
			for {
				r, err := s.Recv()
				if errors.Is(err, io.EOF) {
					return strings.Join(got, " "), nil
				}
				if err != nil {
					return "", err
				}
				got = append(got, fmt.Sprintf("%q#%d", r.GetMessage(), r.GetIndex()))
			}
		}},
		{`EchoClientStream {"message":"a"} {"message":"b"}`, func() (string, error) {
			s, err := c.EchoClientStream(ctx)
			if err != nil {
				return "", err
			}
			for _, m := range []string{"a", "b"} {
				if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
					return "", err
				}
			}
			r, err := s.CloseAndRecv()
			return fmt.Sprintf("%q", r.GetMessage()), err
		}},
		{`EchoBidiStream {"message":"x"} {"message":"y"}`, func() (string, error) {
			s, err := c.EchoBidiStream(ctx)
			if err != nil {
				return "", err
			}
			var got []string
			for _, m := range []string{"x", "y"} {
				if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
					return "", err
				}
				r, err := s.Recv()
				if err != nil {
					return "", err
				}
				got = append(got, fmt.Sprintf("%q#%d", r.GetMessage(), r.GetIndex()))
			}
			if err := s.CloseSend(); err != nil {
				return "", err
			}
			if _, err := s.Recv(); !errors.Is(err, io.EOF) {
				return "", fmt.Errorf("after the last answer: %v, want the end of the stream", err)
			}
			return strings.Join(got, " "), nil
		}},
		{`EchoUnary {"message":"x","fail_code":5}`, func() (string, error) {
			_, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: "x", FailCode: 5})
			st := status.Convert(err)
			if err == nil || st.Code() != 5 {
				return "", fmt.Errorf("got %v, want NOT_FOUND from the worker", err)
			}
			return fmt.Sprintf("status %s %q, from the worker", st.Code(), st.Message()), nil
		}},
	}
	for _, s := range steps {
		start := time.Now()
		got, err := s.call()
		if err != nil {
			return fmt.Errorf("demo %s: %w", s.name, err)
		}
		fmt.Printf("echo: demo %s → %s (%s)\n", s.name, got, time.Since(start).Round(10*time.Microsecond))
	}
	return nil
}
