//go:build cgo

package kafkarpctest_test

import (
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// isDefaultClient reports whether c is of DefaultClient in a build with cgo.
func isDefaultClient(c kafkaclient.Client) bool {
	_, ok := c.(*confluent.Client)
	return ok
}
