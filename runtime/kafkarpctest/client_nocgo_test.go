//go:build !cgo

package kafkarpctest_test

import (
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// isDefaultClient reports whether c is of DefaultClient in a build without
// cgo.
func isDefaultClient(c kafkaclient.Client) bool {
	_, ok := c.(*franz.Client)
	return ok
}
