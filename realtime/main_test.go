package realtime

import (
	"os"
	"testing"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// TestMain starts the shared redis-server and 3-node cluster on first use and
// stops them when the package's tests are done.
func TestMain(m *testing.M) { os.Exit(redistest.Run(m)) }
