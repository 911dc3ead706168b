package cache

import (
	"os"
	"testing"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Run(m)) }
