package seal_test

import (
	"fmt"

	"github.com/elevacare/eleva-redis/internal/seal"
)

func Example() {
	// ELEVA_ENCRYPTION_KEY: the current key first, older keys after it.
	keyring, err := seal.ParseKeys("k2:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=")
	if err != nil {
		panic(err)
	}
	ad := []byte("tmp/setup/user-42") // the value's logical key
	sealed := keyring.Seal([]byte(`{"step":3}`), ad)
	plain, err := keyring.Open(sealed, ad)
	fmt.Println(string(plain), err)

	_, err = keyring.Open(sealed, []byte("tmp/setup/user-43")) // copied to another key
	fmt.Println(err != nil)
	// Output:
	// {"step":3} <nil>
	// true
}
